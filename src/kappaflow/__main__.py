from kappaflow.cli import main

main()
