from waq.cli import main

main()
