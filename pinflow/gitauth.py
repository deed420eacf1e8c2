"""How pinflow's own tools hand a token to git: never in a URL, a config file or a command line.

`ps` shows every command line to every user, and a token in a remote URL stays in .git/config.
git asks a credential helper for the password instead (what people type into their shell), or
gets one header through the environment of one git process (what `pinflow up` uses itself).
"""

from __future__ import annotations

import base64

# A credential helper that answers with the token in $PINFLOW_PUSH_TOKEN.
CREDENTIAL_HELPER = '!f() { echo username=pinflow; echo "password=$PINFLOW_PUSH_TOKEN"; }; f'


def git_auth_env(token: str) -> dict[str, str]:
    """git configuration, through the environment of one git process, that sends `token`:
    neither the command line (anyone can read it in ps) nor .git/config sees it."""
    basic = base64.b64encode(f"pinflow:{token}".encode()).decode()
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
    }


def push_recipe(git_url: str, track: str) -> str:
    """How to push with a `push` token that stays out of the remote URL, .git/config and
    every command line (what `pinflow repo create` prints)."""
    origin = git_url.split("/git/")[0]
    return (
        "push with a push token (`pinflow token create --scope push`) in $PINFLOW_PUSH_TOKEN:\n"
        f"  git config credential.{origin}.helper '{CREDENTIAL_HELPER}'\n"
        f"  git remote add pinflow {git_url}\n"
        f"  git push pinflow {track}\n"
    )
