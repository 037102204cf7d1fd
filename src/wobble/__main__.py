from wobble.cli import main

main()
