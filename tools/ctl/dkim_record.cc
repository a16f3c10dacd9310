#include "dkim_record.h"

#include "ringmail/dkim/key.h"

#include <fmt/format.h>

#include <cstdio>

namespace ringmail::ctl {

std::string txt_strings(const std::string& record) {
    std::string out;
    for (std::size_t at = 0; at < record.size(); at += 255) {
        if (!out.empty())
            out += ' ';
        out += '"';
        out += record.substr(at, 255);
        out += '"';
    }
    return out;
}

int run_dkim_record(const std::string& key_file, const std::string& selector,
                    const std::string& domain) {
    std::string why;
    auto key = dkim::private_key::load_file(key_file, why);
    if (!key) {
        std::fprintf(stderr, "ringmailctl: dkim-record: %s\n", why.c_str());
        return 1;
    }
    if (key->alg() == dkim::algorithm::rsa_sha256 && key->bits() < dkim::warn_rsa_bits) {
        std::fprintf(stderr,
                     "ringmailctl: dkim-record: warning: an RSA key of %u bits; use 2048 or more "
                     "(RFC 8301)\n",
                     key->bits());
    }
    std::string name = selector + "._domainkey";
    if (!domain.empty())
        name += "." + domain + ".";
    fmt::print("{}\tIN\tTXT\t( {} )\n", name, txt_strings(key->dns_record()));
    if (std::fflush(stdout) != 0) {
        std::fputs("ringmailctl: dkim-record: cannot write to standard output\n", stderr);
        return 1;
    }
    return 0;
}

}  // namespace ringmail::ctl
