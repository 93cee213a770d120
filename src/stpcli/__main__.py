from stpcli.cli import main

main()
