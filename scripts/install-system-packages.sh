#!/bin/sh
# Install the Debian packages the tests run for real: Postfix (postmap and a
# real smtpd), Dovecot (a real POP3/IMAP server writing a real log),
# systemd-journal-remote (real journal files for journalctl to read) and
# man-db (man --warnings checks that the man pages render cleanly).
# Their system services are never started: the tests run their own instances
# on loopback, and a packaged service would listen on every interface.
set -eu

packages="postfix postfix-lmdb postfix-cdb dovecot-core dovecot-pop3d dovecot-imapd
    systemd-journal-remote zstd man-db"
missing=""
for package in $packages; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
        || missing="$missing $package"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages:$missing; install them as root" >&2
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
apt-get install -y -qq --no-install-recommends $missing >/dev/null
