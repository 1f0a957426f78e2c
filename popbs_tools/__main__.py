from popbs_tools.cli import main

main()
