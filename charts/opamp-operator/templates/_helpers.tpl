{{/*
Every object is named "opamp-operator": the CRDs and ClusterRoles are cluster-wide, so one
release per cluster is what works, and the alert rules and the dashboard can name the
Deployment and the job without knowing the release.
*/}}
{{- define "opamp-operator.name" -}}
opamp-operator
{{- end }}

{{/* The namespace whose OpAMPAgent resources the operator serves (its Role lives there). */}}
{{- define "opamp-operator.servedNamespace" -}}
{{- .Values.watchNamespace | default .Release.Namespace }}
{{- end }}

{{- define "opamp-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name | default (include "opamp-operator.name" .) }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels on every object: the kustomize base's two, plus Helm's bookkeeping. */}}
{{- define "opamp-operator.labels" -}}
app.kubernetes.io/name: {{ include "opamp-operator.name" . }}
app.kubernetes.io/part-of: opamp-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Selects the operator's pods; the same as the kustomize base, so they can be swapped. */}}
{{- define "opamp-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "opamp-operator.name" . }}
{{- end }}

{{- define "opamp-operator.subject" -}}
- kind: ServiceAccount
  name: {{ include "opamp-operator.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}

{{/*
What the schema cannot say. The operator refuses a heartbeat timeout not above the interval;
an unset one is the operator's default (FleetSettings in operator/opamp_operator/config.py;
a test keeps these equal), so a timeout alone is checked against the default interval.
*/}}
{{- define "opamp-operator.checkHeartbeat" -}}
{{- $h := .Values.heartbeat }}
{{- $interval := default 30 $h.interval | float64 }}
{{- $timeout := default 60 $h.timeout | float64 }}
{{- if le $timeout $interval }}
{{- $default := ", the operator's default" }}
{{- fail (printf "heartbeat.timeout (%v%s) must exceed heartbeat.interval (%v%s)"
    $timeout (ternary $default "" (kindIs "invalid" $h.timeout))
    $interval (ternary $default "" (kindIs "invalid" $h.interval))) }}
{{- end }}
{{- end }}

{{/* A CA key names a key of the TLS Secret: without the Secret it would be ignored. */}}
{{- define "opamp-operator.checkTLS" -}}
{{- if and .Values.tls.clientCAKey (not .Values.tls.existingSecret) }}
{{- fail (printf "tls.clientCAKey (%s) is a key of tls.existingSecret, which is not set" .Values.tls.clientCAKey) }}
{{- end }}
{{- end }}
