from gptossctl.cli.main import main

main()
