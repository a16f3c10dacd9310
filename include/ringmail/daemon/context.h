// The daemon's wiring: what every shard reads and nobody writes once the shards run — the
// parsed configuration and the values derived from it at start-up (parsed listener endpoints,
// per-listener session settings, which spool directories each shard owns, the TLS credentials
// and ticket key, the AUTH verifier and failure limiter, the rings between the delivery engines).
//
// Built on the main thread before the shards start, destroyed after they are joined; shards
// hold a const reference. Building it fails with one clear message (bad endpoint, a
// certificate or users file that does not load). The one thing that changes
// while the shards run is reload_state (SIGHUP).
#pragma once

#include "ringmail/admin/control.h"
#include "ringmail/admin/rule_recorder.h"
#include "ringmail/auth/credential_store.h"
#include "ringmail/auth/failure_limiter.h"
#include "ringmail/auth/verifier.h"
#include "ringmail/config/config.h"
#include "ringmail/core/mailbox.h"
#include "ringmail/core/metrics.h"
#include "ringmail/core/result.h"
#include "ringmail/core/socket.h"
#include "ringmail/delivery/messages.h"
#include "ringmail/dkim/signer.h"
#include "ringmail/queue/bounce_class.h"
#include "ringmail/queue/handoff.h"
#include "ringmail/queue/shaping.h"
#include "ringmail/reception/listener.h"
#include "ringmail/tls/credentials.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ringmail::daemon {

// Every listener's certificates, indexed like cfg.listen; null for a listener without any.
// Immutable once built: a reload builds a new set.
using tls_credentials_set = std::vector<std::shared_ptr<const tls::server_credentials>>;

// What SIGHUP changes while the shards run. The main thread writes, then wakes every shard; a
// shard looks at it when woken or at its next flush (no lock on any mail path).
struct reload_state {
    std::atomic<std::uint64_t> generation{0};  // bumped by each SIGHUP: reopen log files
    // Replaced whole by a successful certificate reload. A woken shard loads it and, when the
    // pointer changed, rebuilds its server contexts; running sessions keep their old context.
    std::atomic<std::shared_ptr<const tls_credentials_set>> tls;
    // Replaced whole by a successful key reload ([[dkim]]); a woken shard builds its signer
    // from it. A message in progress keeps the signer it started with.
    std::atomic<std::shared_ptr<const dkim::key_set>> dkim;
};

// Shared by the shards' delivery engines; built before they start, destroyed after.
struct delivery_shared {
    std::unique_ptr<delivery::mailbox> mailbox;
    std::unique_ptr<queue::spare_gauges> gauges;  // null with one shard
    // Traffic shaping (issue 16): providers, pools, rules and their shared limits; null when
    // nothing of it is configured.
    std::unique_ptr<queue::shaping_context> shaping;
    // What the rules fire goes to the admin thread's suspension store through it (the
    // shaping context's recorder); with shaping only.
    std::unique_ptr<admin::rule_recorder> recorder;
    // Drain: a shard that has nothing in flight (no connection, nothing to send) says so here;
    // every shard stops only once all of them are quiet (see delivery::engine::idle).
    std::unique_ptr<std::atomic<bool>[]> quiet;
    // Bounce classification rules (immutable, read by every shard) and, per shard, its failed
    // recipients by (outcome, category): bounce_counts[shard] is written by that shard only.
    // The metrics endpoint sums the shards' relaxed loads and labels them with
    // bounces->names() and queue::outcome_name.
    std::shared_ptr<const queue::bounce_classifier> bounces;
    std::unique_ptr<queue::bounce_counters[]> bounce_counts;
};

struct daemon_context {
    config::settings cfg;
    unsigned shards = 1;
    std::vector<reception::listener_settings> listeners;  // parallel to cfg.listen
    // spool_dirs[i]: the shard-<N> directories shard i recovers and drains. Its own comes
    // first; directories left by a run with more shards are spread over the current ones.
    std::vector<std::vector<unsigned>> spool_dirs;
    delivery_shared delivery;  // the rings between the engines, their gauges and drain flags
    // Behind a pointer so the context stays movable; shards reach it through a const context.
    std::unique_ptr<reload_state> reload = std::make_unique<reload_state>();
    // One process-wide session ticket key (tickets resume on any shard and across reloads);
    // null when no listener has certificates.
    std::shared_ptr<const tls::ticket_key> tickets;
    // Password verification off the shard threads; null without [auth] users_file. Shards use
    // their own rings in it (submit/poll with their id); the main thread calls reload().
    std::unique_ptr<auth::verifier> verifier;
    // One failed-AUTH count per client address for the whole daemon (a table of atomic words:
    // the shards share it without a lock). Always present; used only where AUTH is offered.
    std::unique_ptr<auth::failure_limiter> auth_limiter;
    // metrics[i]: what shard i publishes for /metrics (it writes, the admin thread reads).
    std::unique_ptr<core::shard_metrics[]> metrics;
    // The admin thread's rings to and from the shards (it is participant `shards`).
    std::unique_ptr<admin::admin_mailbox> admin_mailbox;
    // The suspensions restored from spool_dir at start-up, operators' and rules' (the shards
    // start with them; the admin thread holds the master copy after that).
    std::shared_ptr<const queue::suspensions> suspensions;
    std::string suspensions_path;
    // admin.token_file's token; "" without one.
    std::string admin_token;
    // With server.user: the shards wait here after start() while the main thread drops root
    // (core::shard_options::start_gate); null without it.
    std::unique_ptr<std::atomic<int>> start_gate;
};

// admin.token_file's token: the file's first line without surrounding blanks. nullopt with
// `why` when the file cannot be read or holds no token.
std::optional<std::string> load_admin_token(const config::settings& cfg, std::string& why);

// Derives everything from `cfg` (loads certificates and the users file, starts the verifier's
// workers); `why` gets the one-line reason on failure.
std::optional<daemon_context> make_context(config::settings cfg, std::string& why);

// Start-up, --check-config and SIGHUP (main thread): reads and checks every listener's
// certificate/key pairs. nullopt with `why` naming the listener and the file on failure.
std::optional<tls_credentials_set> load_tls_credentials(const config::settings& cfg,
                                                        std::string& why);

// The same for `[auth] users_file` (a store without users when AUTH is off).
std::shared_ptr<const auth::credential_store> load_users(const config::settings& cfg,
                                                         std::string& why);

// Start-up (main thread, before any shard binds): makes sure no other process serves a listen
// address (core::claim_endpoint, then core::probe_unshared). The claims go to `claims` and
// must stay open while the daemon runs. false with `why` naming the listener and its address.
bool claim_listen_addresses(const daemon_context& ctx, std::vector<int>& claims, std::string& why);

// Start-up, --check-config and SIGHUP (main thread): every [[dkim]] table with its key loaded.
// nullptr with `why` naming the table and the file on failure; a table whose RSA key has fewer
// than 2048 bits adds a line to `warnings`.
std::shared_ptr<const dkim::key_set> load_dkim_keys(const config::settings& cfg, std::string& why,
                                                    std::vector<std::string>& warnings);

// What --check-config verifies beyond the parser, without binding or changing anything:
// a proxy_protocol listener nobody may use, that spool_dir (and its shard directories) exists or
// can be created and is writable, that the delivery log's directory is writable, certificates, the
// users file, the DKIM keys. `why` on failure, naming the key.
bool check_context(const config::settings& cfg, std::string& why);
// delivery.bounce_rules_file, compiled; null with `why` naming the file, line and rule.
std::shared_ptr<const queue::bounce_classifier> load_bounce_rules(const config::settings& cfg,
                                                                  std::string& why);

}  // namespace ringmail::daemon
