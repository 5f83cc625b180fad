"""Run the platform with ``python -m platform_server``."""

from platform_server.app import main

main()
