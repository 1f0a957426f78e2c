#!/bin/sh
# Install the Debian packages the tests run for real: Postfix (postmap and a
# real smtpd), Dovecot (a real POP3/IMAP server writing a real log),
# systemd-journal-remote (real journal files for journalctl to read) and
# ucspi-tcp-ipv6 (qmail's tcprules) and man-db (man --warnings checks that the
# man pages render cleanly).
# Their system services are never started: the tests run their own instances
# on loopback, and a packaged service would listen on every interface.
#
# Sendmail and Exim cannot be installed beside Postfix (each package provides
# mail-transport-agent), nor the original ucspi-tcp beside ucspi-tcp-ipv6:
# those packages are unpacked with dpkg -x into $POPBS_MTA_TOOLS (default
# /opt/popbs-mta-tools), one folder each, and the tests run the binaries from
# there. Nothing of them is configured or started.
set -eu

packages="postfix postfix-lmdb postfix-cdb dovecot-core dovecot-pop3d dovecot-imapd
    systemd-journal-remote zstd ucspi-tcp-ipv6 libidn12 man-db"
tools=${POPBS_MTA_TOOLS:-/opt/popbs-mta-tools}
# folder: packages unpacked into it
unpacked="sendmail:sendmail-bin exim:exim4-daemon-light ucspi-tcp:ucspi-tcp"
missing=""
for package in $packages; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
        || missing="$missing $package"
done
unpack=""
for entry in $unpacked; do
    [ -f "$tools/${entry%%:*}/.unpacked" ] || unpack="$unpack $entry"
done
# The exim4 binary looks its user up at start, even for -be and -bh.
getent passwd Debian-exim >/dev/null || unpack="$unpack user"
[ -z "$missing$unpack" ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages or unpacked tools:$missing$unpack;" \
        "run this script as root" >&2
    exit 1
fi

# policy-rc.d answering 101 forbids invoke-rc.d to start any service.
guard=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$guard"
    chmod 755 "$guard"
    trap 'rm -f "$guard"' EXIT
fi

# "No configuration": the package leaves main.cf alone, and none is written.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
[ -z "$missing" ] || apt-get install -y -qq --no-install-recommends $missing >/dev/null

for entry in $unpack; do
    if [ "$entry" = user ]; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin Debian-exim
        continue
    fi
    folder="$tools/${entry%%:*}"
    download=$(mktemp -d)
    (cd "$download" && apt-get download -qq "${entry#*:}")
    rm -rf "$folder"
    mkdir -p "$folder"
    dpkg -x "$download"/*.deb "$folder"
    rm -rf "$download"
    # Unpacked copies are nobody's setuid or setgid programs.
    find "$folder" -type f -perm /6000 -exec chmod ug-s {} +
    touch "$folder/.unpacked"
done
