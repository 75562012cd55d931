// Command kstatus-check prints the kstatus verdict of Kubernetes objects, as Flux and kpt
// compute it (sigs.k8s.io/cli-utils/pkg/kstatus/status).
//
// Input on stdin: one JSON array of objects (as `kubectl get -o json` prints items).
// Output on stdout: one JSON object per input object, in order:
// {"name": ..., "kind": ..., "status": "Current"|"InProgress"|"Failed"|..., "message": ...}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Name    string `json:"name"`
	Kind    string `json:"kind"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	// utiljson, not encoding/json: numbers become int64, as the API machinery expects
	// (metadata.generation read as a float64 is an error in kstatus).
	data, err := io.ReadAll(os.Stdin)
	var objects []interface{}
	if err == nil {
		err = utiljson.Unmarshal(data, &objects)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kstatus-check: stdin is not a JSON array of objects: %v\n", err)
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout)
	for _, item := range objects {
		object, ok := item.(map[string]interface{})
		if !ok {
			fmt.Fprintf(os.Stderr, "kstatus-check: not an object: %v\n", item)
			os.Exit(2)
		}
		u := &unstructured.Unstructured{Object: object}
		result, err := status.Compute(u)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus-check: %s/%s: %v\n", u.GetKind(), u.GetName(), err)
			os.Exit(1)
		}
		line := verdict{u.GetName(), u.GetKind(), string(result.Status), result.Message}
		if err := out.Encode(line); err != nil {
			os.Exit(1)
		}
	}
}
