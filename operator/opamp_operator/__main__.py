from opamp_operator.cli import main

raise SystemExit(main())
