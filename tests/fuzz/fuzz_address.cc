// libFuzzer target: the path and ESMTP parameter parsers must never crash, and what they
// accept must respect the RFC 5321 limits and UTF-8 rules they promise.
#include "ringmail/smtp/address.h"
#include "ringmail/smtp/dsn_params.h"

#include "fuzz_check.h"
#include <cstdint>
#include <string_view>

namespace {
using ringmail::fuzz::check;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace ringmail::smtp;
    std::string_view in(reinterpret_cast<const char*>(data), size);
    if (auto m = parse_mail_from(in)) {
        const auto& a = m->reverse_path.address;
        check(a.size() + 2 <= max_path_length, "MAIL path within 256 octets");
        check(is_valid_utf8(a), "MAIL address is valid UTF-8");
        check(!m->reverse_path.utf8 || m->params.smtputf8, "UTF-8 sender needs SMTPUTF8");
        check(m->params.body != ringmail::mail::body_type::binary_mime, "BINARYMIME refused");
        for (unsigned char c : a)
            check(c > ' ' || a.front() == '"', "no controls outside quotes");
    }
    for (bool utf8 : {false, true}) {
        if (auto cmd = parse_rcpt_to(in, utf8)) {
            const auto* r = &cmd->forward_path;
            check(!r->address.empty(), "RCPT never null");
            check(r->address.size() + 2 <= max_path_length, "RCPT path within 256 octets");
            check(utf8 || !r->utf8, "UTF-8 recipient needs SMTPUTF8");
            check(is_valid_utf8(r->address), "RCPT address is valid UTF-8");
            check(cmd->dsn.orcpt.size() <= max_orcpt_length, "ORCPT within 500 octets");
            check((cmd->dsn.notify & ringmail::mail::notify::never) == 0 ||
                      cmd->dsn.notify == ringmail::mail::notify::never,
                  "NOTIFY=NEVER stands alone");
            std::string d = domain_of(r->address);
            check(d.size() <= max_domain_length, "domain within 255 octets");
            for (char c : d)
                check(!(c >= 'A' && c <= 'Z'), "domain lower-cased");
        }
    }
    (void)parse_mail_parameters(in);
    return 0;
}
