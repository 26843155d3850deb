"""Who may connect and which namespace each user is bound to: the allow_uids and namespaces
parsers, which resolve user names to uids while the config loads.

Names are resolved at load time rather than per connection so that a typo stops the daemon at
start instead of locking a user out later, and so the stored values ("self,1001",
"1001:tenantA") print in `tierd stat` and load back as they are. tierd.daemon.peers reads them.
"""
from __future__ import annotations

import pwd
import re

from tierd.config.parsers import is_off
from tierd.errors import ConfigError
from tierd.keys import namespace_problem

#: Largest uid Linux hands out ((uid_t)-1 means "no uid").
MAX_UID = 2**32 - 2

_USERS_HINT = "give uids (numbers), user names or self (the daemon's own user), separated by commas, like self,1001,alice"


def _resolve_user(word: str, where: str, value: object) -> str:
    """'self', a uid or a user name, as 'self' or the uid's digits (names are resolved now, so a
    typo stops the daemon at start instead of locking a user out later)."""
    if word == "self":
        return word
    if re.fullmatch(r"[0-9]+", word, re.ASCII):
        if int(word) > MAX_UID:
            raise ConfigError(f"{where}={value!r}: uid {word} is out of range; {_USERS_HINT}")
        return str(int(word))
    try:
        return str(pwd.getpwnam(word).pw_uid)
    except KeyError:
        raise ConfigError(f"{where}={value!r}: there is no user {word!r} on this machine; {_USERS_HINT}") from None


def _user_words(value: object, where: str, hint: str) -> list[str]:
    """The comma-separated words of a string, or the items of a TOML/YAML list (ints allowed)."""
    if isinstance(value, str):
        items: list[object] = value.split(",")
    elif isinstance(value, list):
        items = list(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    else:
        raise ConfigError(f"{where}={value!r}: {hint}")
    words = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{where}={value!r}: {hint}")
        words.append(item.strip())
    return words


def parse_allow_uids(value: object, where: str, base: str | None) -> str:
    """Who may connect, checked on every connection (SO_PEERCRED): "self" (the default: only the
    daemon's own user), uids and user names. Kept as "self" and uids, comma separated, so the
    value prints in `stat` and loads back as it is."""
    words = _user_words(value, where, _USERS_HINT)
    if not words:
        raise ConfigError(f"{where}={value!r}: nobody could connect; {_USERS_HINT}")
    return ",".join(dict.fromkeys(_resolve_user(w, where, value) for w in words))


def parse_namespaces(value: object, where: str, base: str | None) -> str:
    """Namespace bindings by user: "1001:tenantA,alice:tenantB" (or a TOML/YAML table of user to
    namespace, or a list of "user:namespace" strings). A connection from a listed user sees and
    writes only chunks of its namespace. "", "off" or "none": no bindings. Kept as
    "uid:namespace" pairs, comma separated (so a namespace here cannot contain a comma)."""
    hint = ("give user:namespace pairs separated by commas, like 1001:tenantA,alice:tenantB "
            "(user: a uid, a user name or self), or off")
    if is_off(value):
        return ""
    if isinstance(value, dict):
        pairs: list[tuple[str, object]] = [(str(k), v) for k, v in value.items()]
    else:
        pairs = []
        for word in _user_words(value, where, hint):
            user, sep, namespace = word.partition(":")
            if not sep or not user.strip():
                raise ConfigError(f"{where}={value!r}: {word!r} is not user:namespace; {hint}")
            pairs.append((user, namespace))
    if not pairs:
        raise ConfigError(f"{where}={value!r}: {hint}")
    bound: dict[str, str] = {}
    for user, namespace in pairs:
        name = namespace.strip() if isinstance(namespace, str) else ""
        problem = namespace_problem(name) or ("no commas in a namespace" if "," in name else None)
        if problem is not None:
            raise ConfigError(f"{where}={value!r}: user {user!r}: {problem}; {hint}")
        uid = _resolve_user(user.strip(), where, value)
        if bound.get(uid, name) != name:
            raise ConfigError(f"{where}={value!r}: user {user!r} is bound to two namespaces "
                              f"({bound[uid]!r} and {name!r}); give each user one")
        bound[uid] = name
    return ",".join(f"{uid}:{name}" for uid, name in bound.items())
