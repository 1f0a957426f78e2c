#!/bin/sh
# Run popbs sync on the bundled sample log into ./demo and show the grants.
# Nothing outside ./demo is read or written: Postfix's tools get a main.cf
# of their own there.
set -eu
cd "$(dirname "$0")/.."

out=demo
# The sample log's last login is at 14:55 on Dec 4; act as if it were 15:00
# so that the grants are still within the 30-minute TTL.
now="2026-12-04T15:00:00"
mkdir -p "$out"

postmap=$(PATH="$PATH:/usr/sbin:/usr/local/sbin" command -v postmap || true)
if [ -n "$postmap" ]; then
    mkdir -p "$out/postfix"
    # Postfix's commands wait up to 2 s while main.cf looks freshly edited.
    [ -e "$out/postfix/main.cf" ] || touch -d "1 hour ago" "$out/postfix/main.cf"
    export MAIL_CONFIG="$PWD/$out/postfix"
    set -- --map-type hash --postmap "$postmap"
else
    echo "postmap not found (install Debian's postfix): writing the grant file only"
    set -- --map-type none
fi

popbs sync --log examples/mail.log --map "$out/popbs" --state-dir "$out/state" \
    --now "$now" "$@"

echo "Grants in $out/popbs, as of $now:"
popbs list --map "$out/popbs" --now "$now"
if [ -n "$postmap" ]; then
    echo "Postfix's map answers for 198.51.100.7: $("$postmap" -q 198.51.100.7 "hash:$out/popbs")"
fi
