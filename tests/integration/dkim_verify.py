"""Verifies every DKIM-Signature of messages with dkimpy (Debian python3-dkim).

Run by the system Python that has python3-dkim (test_dkim.py starts it as a subprocess):
    dkim_verify.py --dns 127.0.0.1:PORT FILE...
prints one JSON line per file: a list of {"d", "s", "a", "ok", "record"} in header order
("record": the text of the TXT record that verified it, "" when none did). Keys are
fetched as TXT records from the given DNS server only (the test's dnsmasq); when a selector
has several TXT records each is tried (RFC 6376 3.6.2.2), which is how a key rotation under
one selector is published.
"""

import argparse
import json
import sys

import dkim
import dkim.util
import dns.message
import dns.query
import dns.rdatatype


def txt_records(server, port, name):
    q = dns.message.make_query(name, dns.rdatatype.TXT)
    r = dns.query.udp(q, server, timeout=5, port=port)
    out = []
    for rrset in r.answer:
        if rrset.rdtype != dns.rdatatype.TXT:
            continue
        for rd in rrset:
            out.append(b"".join(rd.strings))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dns", required=True)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    host, port = args.dns.rsplit(":", 1)
    port = int(port)
    cache = {}

    def records(name):
        key = name.decode() if isinstance(name, bytes) else name
        if key not in cache:
            cache[key] = txt_records(host, port, key)
        return cache[key]

    for path in args.files:
        with open(path, "rb") as f:
            msg = f.read()
        d = dkim.DKIM(msg)
        sigs = [v for (n, v) in d.headers if n.lower() == b"dkim-signature"]
        results = []
        for idx, value in enumerate(sigs):
            tags = dkim.util.parse_tag_value(value)
            name = tags[b"s"] + b"._domainkey." + tags[b"d"] + b"."
            ok = False
            which = ""
            for rec in records(name):
                try:
                    if dkim.DKIM(msg).verify(idx=idx, dnsfunc=lambda *_a, _r=rec, **_k: _r):
                        ok = True
                        which = rec.decode()
                        break
                except dkim.DKIMException:
                    pass
            results.append({"d": tags[b"d"].decode(), "s": tags[b"s"].decode(),
                            "a": tags.get(b"a", b"").decode(), "ok": ok, "record": which})
        print(json.dumps(results), flush=True)


if __name__ == "__main__":
    sys.exit(main())
