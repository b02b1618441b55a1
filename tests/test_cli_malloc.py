"""`llmforge <training command>` restarts itself once with glibc's malloc told to keep freed memory
(cli.CACHING_MALLOC); in-process callers of main(argv) and users' own settings are left alone."""
import os
import platform
import subprocess
import sys

import pytest

from llmforge import cli


class Exec(Exception):
    pass


@pytest.fixture
def fake_exec(monkeypatch):
    calls = []

    def execve(path, args, env):
        calls.append((path, args, env))
        raise Exec

    monkeypatch.setattr(cli.os, "execve", execve)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("LLMFORGE_SYSTEM_MALLOC", raising=False)
    return calls


needs_glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")


@needs_glibc
def test_training_command_from_a_shell_restarts_with_the_tunables(fake_exec, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["llmforge", "pretrain", "recipe.toml"])
    with pytest.raises(Exec):
        cli.main()
    (path, args, env), = fake_exec
    assert path == sys.executable and args[1:] == ["-m", "llmforge.cli", "pretrain", "recipe.toml"]
    assert env["GLIBC_TUNABLES"] == cli.CACHING_MALLOC
    assert env["PATH"] == os.environ["PATH"]  # the rest of the environment is kept


@pytest.mark.parametrize("env", [{"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, {"LLMFORGE_SYSTEM_MALLOC": "1"}])
def test_users_setting_is_kept(fake_exec, monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cli._reexec_with_caching_malloc(["sft", "x.toml"])
    assert fake_exec == []


def test_in_process_callers_and_other_commands_are_not_restarted(fake_exec, capsys):
    assert cli.main(["info"]) == 0  # explicit argv: in-process
    cli._reexec_with_caching_malloc(["info"])
    cli._reexec_with_caching_malloc([])
    assert fake_exec == []


@needs_glibc
def test_the_restarted_program_runs_once():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LLMFORGE_SYSTEM_MALLOC")}
    code = ("import os, sys; sys.argv = ['llmforge', 'pretrain', '/nonexistent/recipe.toml']; "
            "from llmforge import cli; cli.main()")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    # the error comes from the restarted `python -m llmforge.cli`, which did not restart again,
    # as one line (a user's mistake, not a crash)
    assert r.stderr.count("llmforge pretrain: error: FileNotFoundError: recipe /nonexistent/recipe.toml not found") == 1
    assert "Traceback" not in r.stderr
    env["LLMFORGE_TRACEBACK"] = "1"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.count("Traceback") == 1 and 'File "<string>"' not in r.stderr
