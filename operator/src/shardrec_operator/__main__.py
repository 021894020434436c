"""`python -m shardrec_operator`: the same as the `shardrec-operator` console script."""

from shardrec_operator.main import main

raise SystemExit(main())
