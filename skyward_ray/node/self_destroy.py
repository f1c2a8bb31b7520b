"""A container's self-destroy through its cloud's API, as one shell snippet that does not give up early.

A pod or instance ends itself by calling its cloud's API with its own scoped key (RunPod,
Vast.ai). A single failed call, a hung CLI or an unset variable used to leave the machine billing:
the boot script runs under `set -u`, so one unset variable aborted the command before its fallback;
`runpodctl` had no time bound; an HTTP error counted as done. The snippet built here therefore

- reads every variable as `${X:-}`, and first takes back the cloud's variables from PID 1's
  environment when this process lost them (a shell started from an SSH session),
- bounds every call (`timeout`, where the image has it, plus curl's own `-m`),
- retries with exponential backoff for `budget_s` seconds (minutes: a cloud API's bad moment),
  stopping early only on a definite answer: done (HTTP 2xx), or refused (any other 4xx but 408 and
  429: retrying cannot change a refusal, and a 404 means the machine is already gone).

An attempt is a shell snippet whose status says what happened: 0 done, 2 refused, anything else
worth retrying. Only the clouds' API calls go through here; the clouds destroy, never stop (a
stopped container keeps billing its disk).
"""

from __future__ import annotations

import json
import shlex

BUDGET_S = 600  # how long a machine keeps trying to end itself before it gives up (and exits)
CALL_S = 60  # the most one call may take
MAX_WAIT_S = 60  # the longest pause between two attempts
REFUSED = 2  # an attempt's status for a definite refusal (see the module docstring)

_BOUND = "_sk_t"  # the shell variable holding the `timeout` prefix (empty where the image lacks it)


def recover_environment(variables: tuple[str, ...]) -> str:
    """Take back `variables` from PID 1's environment when the first is unset here (a process
    started outside the container's entrypoint, e.g. from an SSH session, lost them)."""
    pattern = "|".join(variables)
    return (f'[ -n "${{{variables[0]}:-}}" ] || while IFS= read -r kv; do export "$kv"; done < <(tr "\\0" "\\n" '
            f'< /proc/1/environ 2>/dev/null | grep -E "^({pattern})=")')


def bounded(command: str) -> str:
    """`command` (a simple command) killed after `CALL_S` seconds where `timeout` exists."""
    return f"${_BOUND} {command}"


def http_attempt(curl_arguments: str, call_s: int = CALL_S) -> str:
    """One bounded curl call as an attempt: prints the answer's body; 0 on 2xx, `REFUSED` on
    another 4xx (408 and 429 excepted), 1 on no answer or a server error."""
    call = bounded(f"curl -sS -m {call_s} -w '\\n%{{http_code}}' {curl_arguments}")
    return ("{ _sk_out=$(" + call + "); _sk_code=${_sk_out##*$'\\n'}; printf '%s\\n' \"${_sk_out%$'\\n'*}\"; "
            f'case "$_sk_code" in 2??) true ;; 408|429) false ;; 4??) (exit {REFUSED}) ;; *) false ;; esac; }}')


def python_http_attempt(method: str, url_shell: str, headers: dict[str, str], call_s: int = CALL_S) -> str:
    """The same attempt with the image's python3, for images without curl. `url_shell` and the
    header values are shell words (variables expand); they reach Python through its environment."""
    env = [f"_SK_URL={url_shell}"] + [f"_SK_H{i}={value}" for i, value in enumerate(headers.values())]
    names = ", ".join(f'{json.dumps(name)}: os.environ["_SK_H{i}"]' for i, name in enumerate(headers))
    code = "\n".join([  # double quotes only: the code travels in single quotes
        "import os, sys, urllib.error as e, urllib.request as u",
        "try:",
        f'    r = u.urlopen(u.Request(os.environ["_SK_URL"], data=b"{{}}", method={json.dumps(method)}, '
        f"headers={{{names}}}), timeout={call_s})",
        '    print(r.read().decode(errors="replace")); sys.exit(0)',
        "except e.HTTPError as x:",
        '    print(x.read().decode(errors="replace"))',
        f"    sys.exit(1 if x.code >= 500 or x.code in (408, 429) else {REFUSED})",
        "except Exception as x:",
        "    print(x); sys.exit(1)",
    ])
    return " ".join(env) + " " + bounded(f"python3 -c {shlex.quote(code)}")


def retrying(attempt: str, what: str, budget_s: int = BUDGET_S, call_s: int = CALL_S) -> str:
    """Run `attempt` until it is done or refused, or `budget_s` seconds pass, waiting 2 s, 4 s, ...
    (at most `MAX_WAIT_S`) between tries. Safe under `set -u`; every name it sets starts `_sk_`."""
    return "\n".join([
        "{ " + f'{_BOUND}=""; command -v timeout >/dev/null 2>&1 && {_BOUND}="timeout -k 5 {call_s}"',
        f"  _sk_end=$((SECONDS + {budget_s})); _sk_wait=2",
        "  while :; do",
        f"    {attempt}",
        "    _sk_rc=$?",
        '    [ "$_sk_rc" -eq 0 ] && break',
        f'    [ "$_sk_rc" -eq {REFUSED} ] && {{ echo "skyward: the cloud refused to {what}" >&2; break; }}',
        f'    [ "$SECONDS" -ge "$_sk_end" ] && {{ echo "skyward: could not {what} in {budget_s}s" >&2; break; }}',
        f'    echo "skyward: could not {what} (status $_sk_rc); retrying in ${{_sk_wait}}s" >&2',
        '    sleep "$_sk_wait"',
        f"    _sk_wait=$(( _sk_wait * 2 > {MAX_WAIT_S} ? {MAX_WAIT_S} : _sk_wait * 2 ))",
        "  done; }",
    ])


__all__ = ["BUDGET_S", "CALL_S", "REFUSED", "bounded", "http_attempt", "python_http_attempt", "recover_environment",
           "retrying"]
