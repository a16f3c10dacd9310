#include "ringmail/tls/errc.h"

#include <string>

namespace ringmail::tls {

namespace {
class category final : public std::error_category {
  public:
    const char* name() const noexcept override { return "ringmail.tls"; }
    std::string message(int ev) const override {
        switch (static_cast<errc>(ev)) {
            case errc::no_certificates:
                return "no certificate configured";
            case errc::file_unreadable:
                return "file cannot be read";
            case errc::bad_certificate:
                return "no valid PEM certificate";
            case errc::bad_private_key:
                return "no valid PEM private key";
            case errc::key_mismatch:
                return "private key does not match the certificate";
            case errc::bad_ca_file:
                return "CA file does not load";
            case errc::system_ca_unavailable:
                return "system CA store unavailable";
            case errc::context_failed:
                return "TLS context could not be built";
            case errc::handshake_failed:
                return "TLS handshake failed";
            case errc::protocol_error:
                return "TLS protocol error";
            case errc::input_overflow:
                return "TLS input limit exceeded";
            case errc::connection_closed:
                return "connection closed during the TLS handshake";
        }
        return "unknown ringmail.tls error";
    }
};
}  // namespace

const std::error_category& tls_category() noexcept {
    static const category c;
    return c;
}

}  // namespace ringmail::tls
