from stpcli.entry import main

main()
