// libFuzzer target: the reader of raw DNS messages (dns::summarize, dns::read_name), fed what a
// hostile or broken resolver could answer.
//
// The input is the message itself (AddressSanitizer catches any read past it). Properties: a
// summary agrees with the header it was read from, its TTLs are clamped (RFC 2181 §8) and a
// negative TTL is the smaller of the SOA's TTL and MINIMUM; a name read at any offset ends
// inside the message after where it starts, expands to at most 253 octets in dotted form, is
// lower-case, and reads the same with and without the dotted form asked for.
#include "ringmail/dns/wire.h"

#include "fuzz_check.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace {

using ringmail::fuzz::check;

std::uint16_t get16(std::span<const std::uint8_t> m, std::size_t at) {
    return static_cast<std::uint16_t>((m[at] << 8) | m[at + 1]);
}

void check_ttl(const std::optional<std::uint32_t>& ttl) {
    check(!ttl || *ttl <= 0x7FFFFFFFu, "TTLs with the top bit set read as 0");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    namespace dns = ringmail::dns;
    const std::span<const std::uint8_t> msg(data, size);

    if (auto s = dns::summarize(msg)) {
        check(size >= 12, "a summary needs a whole header");
        check(s->id == get16(msg, 0), "id from the header");
        check(s->rcode == (msg[3] & 0x0F), "rcode from the header");
        check(s->truncated == ((msg[2] & 0x02) != 0), "TC from the header");
        check(s->answer_count == get16(msg, 6), "answer count from the header");
        check(s->answer_count > 0 || !s->min_answer_ttl, "no answer, no answer TTL");
        check(s->soa_ttl.has_value() == s->soa_minimum.has_value(), "SOA read whole");
        check_ttl(s->min_answer_ttl);
        check_ttl(s->soa_ttl);
        check_ttl(s->soa_minimum);
        if (auto neg = s->negative_ttl())
            check(*neg == std::min(*s->soa_ttl, *s->soa_minimum), "negative TTL per RFC 2308");
        else
            check(!s->soa_ttl, "a negative TTL with every SOA");
    }

    // Names at every offset of the first 512 octets (a UDP answer's size).
    for (std::size_t at = 0; at < std::min<std::size_t>(size, 512); ++at) {
        std::string dotted;
        auto with = dns::read_name(msg, at, &dotted);
        auto without = dns::read_name(msg, at);
        check(with.has_value() == without.has_value(), "the dotted form changes no outcome");
        if (!with)
            continue;
        check(*with == *without, "the dotted form changes no end");
        check(*with > at && *with <= size, "a name ends inside the message after its start");
        check(dotted.size() <= 253, "a name expands to at most 253 octets");
        for (char c : dotted)
            check(!(c >= 'A' && c <= 'Z'), "names are lower-cased");
    }
    return 0;
}
