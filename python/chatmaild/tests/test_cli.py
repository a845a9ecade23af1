"""The shared command line: sockets and the token file default to their chatmail.ini keys."""

from __future__ import annotations

import argparse
from pathlib import Path

from chatmaild.cli import add_socket_arguments, parse_args_and_config
from chatmaild.logsetup import add_verbose_flag


def socket_parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_socket_arguments(parser, **kwargs)
    add_verbose_flag(parser)
    return parser


def test_socket_defaults_to_the_chatmail_ini_key(make_config):
    config = make_config(metadata_socket="/run/here/metadata.socket")
    args, _ = parse_args_and_config(socket_parser(config_key="metadata_socket"), [str(config.path)])
    assert args.socket == Path("/run/here/metadata.socket")


def test_socket_given_on_the_command_line_wins(make_config):
    config = make_config(metadata_socket="/run/here/metadata.socket")
    argv = [str(config.path), "--socket", "/tmp/other.socket"]
    args, _ = parse_args_and_config(socket_parser(config_key="metadata_socket"), argv)
    assert args.socket == Path("/tmp/other.socket")


def test_a_fixed_default_socket_still_works(make_config):
    config = make_config()
    args, _ = parse_args_and_config(socket_parser(default_socket=Path("/run/x.socket")), [str(config.path)])
    assert args.socket == Path("/run/x.socket")
