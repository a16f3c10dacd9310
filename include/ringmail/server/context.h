// What every shard of the daemon reads and nobody writes once the shards run: the parsed
// configuration and the values derived from it at start-up (parsed listener endpoints, the
// resolved smarthost, per-listener session settings, which spool directories each shard owns).
//
// Built on the main thread before the shards start, destroyed after they are joined; shards
// hold a const reference. Building it fails with one clear message (bad endpoint, smarthost
// name that does not resolve, unsupported listener role).
#pragma once

#include "ringmail/core/config.h"
#include "ringmail/core/result.h"
#include "ringmail/core/socket.h"
#include "ringmail/smtp/client_session.h"
#include "ringmail/smtp/server_session.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ringmail::server {

struct listener_settings {
    core::endpoint endpoint;
    smtp::server_config session;
};

// What SIGHUP changes while the shards run. The main thread writes, then wakes every shard; a
// shard compares the generation at its next loop iteration (no lock on any mail path).
struct reload_state {
    std::atomic<std::uint64_t> generation{0};  // bumped by each SIGHUP: reopen log files
};

struct daemon_context {
    core::config cfg;
    unsigned shards = 1;
    std::vector<listener_settings> listeners;  // parallel to cfg.listen
    std::optional<core::endpoint> smarthost;   // resolved once at start-up
    std::string smarthost_text;                // "host:port" as configured, for logs
    smtp::client_config client;
    // spool_dirs[i]: the shard-<N> directories shard i recovers and drains. Its own comes
    // first; directories left by a run with more shards are spread over the current ones.
    std::vector<std::vector<unsigned>> spool_dirs;
    // Behind a pointer so the context stays movable; shards reach it through a const context.
    std::unique_ptr<reload_state> reload = std::make_unique<reload_state>();
};

// Derives everything from `cfg`; `why` gets the one-line reason on failure.
std::optional<daemon_context> make_context(core::config cfg, std::string& why);

}  // namespace ringmail::server
