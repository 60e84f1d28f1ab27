from naosctl.main import main

main()
