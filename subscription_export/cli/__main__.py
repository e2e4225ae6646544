"""`python -m subscription_export.cli`."""

from subscription_export.cli import main

main()
