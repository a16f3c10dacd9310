// ringmailctl: the administration client. Subcommands:
//   passwd USER [--scheme argon2id|pbkdf2-sha256|cram-md5]
//                        password on stdin -> "USER:HASH" on stdout
//   dkim-record KEY_FILE SELECTOR [--domain D]
//                        the DNS TXT record that publishes a DKIM key
//
// Exit codes: 0 success, 2 usage error (CLI11 parse errors, bad arguments), 1 any other
// failure, always with one message on stderr.
#include "ringmail/auth/credential_store.h"

#include <CLI/CLI.hpp>

#include "dkim_record.h"
#include "passwd.h"
#include <cstdio>
#include <string>

int main(int argc, char** argv) {
    CLI::App app{"ringmailctl: ringmail administration"};
    app.require_subcommand(1);

    CLI::App* passwd = app.add_subcommand(
        "passwd", "hash a password read from standard input; prints USER:HASH for users_file");
    std::string user;
    std::string scheme_text = "argon2id";
    passwd->add_option("USER", user, "user name (no ':', whitespace or control characters)")
        ->required();
    passwd
        ->add_option("--scheme", scheme_text,
                     "hash scheme; cram-md5 enables CRAM-MD5 for this user, and its entry is "
                     "equivalent to the password")
        ->check(CLI::IsMember({"argon2id", "pbkdf2-sha256", "cram-md5"}))
        ->capture_default_str();

    CLI::App* record = app.add_subcommand(
        "dkim-record", "print the DNS TXT record that publishes a DKIM key ([[dkim]] key_file)");
    std::string key_file;
    std::string selector;
    std::string domain;
    record->add_option("KEY_FILE", key_file, "PEM private key (RSA or Ed25519)")->required();
    record->add_option("SELECTOR", selector, "the [[dkim]] selector (s=)")->required();
    record->add_option("--domain", domain, "the signing domain: print the full record name");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int rc = app.exit(e);
        return rc == 0 ? 0 : 2;
    }

    if (passwd->parsed()) {
        const auto s = ringmail::auth::parse_scheme(scheme_text);
        if (!s) {
            std::fprintf(stderr, "ringmailctl: passwd: unknown scheme %s\n", scheme_text.c_str());
            return 2;
        }
        return ringmail::ctl::run_passwd(user, *s, stdin);
    }
    if (record->parsed())
        return ringmail::ctl::run_dkim_record(key_file, selector, domain);
    std::fputs("ringmailctl: no subcommand\n", stderr);
    return 2;
}
