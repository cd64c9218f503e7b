from musicgen_server.cli import main

main()
