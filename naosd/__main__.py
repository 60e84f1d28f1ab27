from naosd.main import main

raise SystemExit(main())
