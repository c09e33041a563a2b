from corebase.cli import main

raise SystemExit(main())
