// What one [[listen]] table means to the connections it accepts: the address, the SMTP
// session's settings, TLS from the first byte (smtps), AUTH, a PROXY protocol header first. Built
// once at start-up from the configuration (daemon/context.h), then read-only and shared by every
// shard.
#pragma once

#include "ringmail/core/cidr.h"
#include "ringmail/core/socket.h"
#include "ringmail/smtp/server_session.h"

#include <cstddef>

namespace ringmail::reception {

struct listener_settings {
    core::endpoint endpoint;
    smtp::server_config session;
    std::size_t index = 0;      // position in cfg.listen (and in the TLS credentials set)
    bool implicit_tls = false;  // role smtps: TLS from the first byte
    bool auth = false;          // [auth] users_file is set: AUTH PLAIN/LOGIN offered
    // A PROXY v1/v2 header comes first, from a source in trusted_proxies only; the client
    // address it carries replaces the connection's peer.
    bool proxy_protocol = false;
    core::cidr_set trusted_proxies;
};

}  // namespace ringmail::reception
