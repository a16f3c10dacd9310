// ringmailctl dkim-record: the DNS TXT record that publishes a DKIM key's public half.
//
// Runs in the ringmailctl process only. A key that does not load is one message on stderr and
// exit code 1 (the same checks as the daemon's start-up).
#pragma once

#include <string>

namespace ringmail::ctl {

// Prints "SELECTOR._domainkey[.DOMAIN.] IN TXT ( "..." "..." )" (strings of at most 255
// octets, RFC 1035 3.3.14). Returns the exit code.
int run_dkim_record(const std::string& key_file, const std::string& selector,
                    const std::string& domain);

// The record's character-strings, quoted, each at most 255 octets: the zone-file form.
std::string txt_strings(const std::string& record);

}  // namespace ringmail::ctl
