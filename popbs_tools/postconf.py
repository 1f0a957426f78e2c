"""Reading Postfix's configuration the way Postfix reads it: through postconf.

postconf knows main.cf's defaults, $name expansion (-x), master.cf's `-o`
overrides (-P, Postfix 2.11 and later) and the services (-F), and honours
MAIL_CONFIG; parsing the files ourselves would get each of those subtly wrong.
"""

from dataclasses import dataclass

from popbs_tools import postfix
from popbs_tools.errors import MapError


class PostconfError(MapError):
    """postconf is missing or refused to answer."""


@dataclass(frozen=True)
class Service:
    name: str  # master.cf's first field: "smtp", "submission", "127.0.0.1:2525"
    type: str  # "inet", "unix", "pass", ...
    command: str  # the daemon: "smtpd", "postscreen", ...
    overrides: dict[str, str]  # its -o parameters, $names expanded
    written: dict[str, str]  # the same as master.cf has them


class Postconf:
    def __init__(self, command: str | None = None) -> None:
        self.command = command or postfix.find_postconf()

    def _run(self, *args: str) -> str:
        try:
            return postfix.run_postconf(*args, command=self.command)
        except MapError as error:
            raise PostconfError(str(error)) from None

    def value(self, name: str) -> str:
        """A main.cf parameter with every $name in it expanded."""
        return self._run("-xh", name).strip()

    def written(self, name: str) -> str:
        """A main.cf parameter as written (or its default)."""
        return self._run("-h", name).strip()

    def map_types(self) -> set[str]:
        return set(self._run("-m").split())

    def version(self) -> tuple[int, ...]:
        text = self.value("mail_version")
        numbers = []
        for part in text.split("."):
            digits = "".join(c for c in part if c.isdigit())
            if not digits:
                break
            numbers.append(int(digits))
        return tuple(numbers)

    def services(self) -> list[Service]:
        """master.cf's services, each with its expanded -o overrides."""
        expanded = self._overrides("-Px")
        written = self._overrides("-P")
        found = []
        for key, value in _pairs(self._run("-F", "*/*/command")):
            name, kind, _ = key.rsplit("/", 2)
            daemon = value.split()[0] if value.split() else ""
            service = (name, kind)
            found.append(
                Service(
                    name,
                    kind,
                    daemon,
                    expanded.get(service, {}),
                    written.get(service, {}),
                )
            )
        return found

    def _overrides(self, option: str) -> dict[tuple[str, str], dict[str, str]]:
        overrides: dict[tuple[str, str], dict[str, str]] = {}
        for key, value in _pairs(self._run(option)):
            name, kind, parameter = key.rsplit("/", 2)
            overrides.setdefault((name, kind), {})[parameter] = value
        return overrides


def _pairs(text: str) -> list[tuple[str, str]]:
    """postconf's "name = value" lines (each value on one line)."""
    pairs = []
    for line in text.splitlines():
        name, sep, value = line.partition(" = ")
        if not sep:
            name, sep, value = line.partition(" =")
        if sep:
            pairs.append((name.strip(), value.strip()))
    return pairs
