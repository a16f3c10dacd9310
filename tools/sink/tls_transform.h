// ringmail-sink's STARTTLS: the connection's byte_transform once the session has said
// "220 Ready to start TLS". A tls::session (a record pump over memory) turns wire bytes into
// plaintext for the SMTP session and the session's replies into records.
//
// Owned by one connection on its shard; built from that shard's tls::server_context. A failed
// handshake or a bad record is a peer error: decode()/encode() return it, the connection
// counts it (handshakes only), sends any alert and closes that connection alone.
#pragma once

#include "ringmail/smtp/server_session.h"
#include "ringmail/tls/session.h"

#include "sink/connection.h"
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace ringmail::sink {

class tls_transform final : public byte_transform {
  public:
    explicit tls_transform(std::shared_ptr<const tls::server_context> context)
        : _tls(std::move(context)) {}

    result<void> decode(std::string_view wire, std::string& plain) override;
    result<void> encode(std::string_view plain, std::string& wire) override;
    bool has_output() const noexcept override { return _tls.has_output(); }
    bool established() const noexcept override { return _tls.established(); }
    std::optional<smtp::tls_details> take_established() override;
    std::string_view error() const noexcept override { return _tls.error(); }

  private:
    tls::session _tls;
    std::string _scratch;  // ciphertext taken while encoding a large reply
    bool _reported = false;
};

}  // namespace ringmail::sink
