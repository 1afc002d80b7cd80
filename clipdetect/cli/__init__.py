"""Command line front: ``clipdetect <command> ...``; ``clipdetect.cli.main.main(argv) -> int`` runs one."""
