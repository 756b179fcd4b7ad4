from hecate.cli import main

main()
