// Dropping root at start-up (issue 15): started as root with `server.user` set, ringmaild binds
// its listeners and opens its spools first, then becomes that user for good.
//
// Main thread only, while every shard waits at its start gate (listeners bound, spools open and
// recovered, nothing served yet): glibc applies setgroups/setgid/setuid to every thread of the
// process, and io_uring's io-wq workers, which keep the credentials of the thread that made
// them, have not been created yet. Fails (one line in `why`) if the user is unknown, if the
// process is neither root nor already that user, if the spool cannot be handed to the user, or
// if root can be regained after the switch.
#pragma once

#include "ringmail/config/config.h"

#include <string>

namespace ringmail::daemon {

// The user exists (for --check-config and start-up); true when server.user is empty.
bool check_run_user(const config::settings& cfg, std::string& why);

// server.user empty: nothing (a warning is logged when running as root). Else: spool_dir and
// everything in it, and the delivery log file if any, are chowned to the user and its primary
// group (the daemon writes there as that user from now on), then initgroups, setgid, setuid,
// and a check that setuid(0) and setgid(0) now fail.
bool drop_privileges(const config::settings& cfg, std::string& why);

}  // namespace ringmail::daemon
