// What one [[listen]] table means to the connections it accepts: the address, the SMTP
// session's settings, TLS from the first byte (smtps), AUTH. Built once at start-up from the
// configuration (daemon/context.h), then read-only and shared by every shard.
#pragma once

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
};

}  // namespace ringmail::reception
