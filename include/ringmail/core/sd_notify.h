// systemd's service notification protocol (sd_notify(3)), spoken directly: one datagram of
// "KEY=value" lines to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or an abstract
// name written with a leading '@'). Type=notify units use it: READY=1 once the listeners are
// open, STOPPING=1 when a drain begins.
//
// Called by the daemon's main thread at start-up and shutdown only (a syscall or three, never
// on a mail path). Without $NOTIFY_SOCKET it does nothing and says so (false); a socket that
// cannot be reached is an error value (the daemon logs it and carries on: a notification is
// advice to the service manager, not a reason to stop serving).
#pragma once

#include "ringmail/core/result.h"

#include <string_view>

namespace ringmail::core {

// Sends `state` ("READY=1", "STOPPING=1\nSTATUS=draining"); true when sent, false when
// $NOTIFY_SOCKET is unset or empty. errc::bad_endpoint: the name is not usable (relative
// path, too long).
result<bool> sd_notify(std::string_view state);
// The same with an explicit socket name (what $NOTIFY_SOCKET would hold), for tests.
result<bool> sd_notify_to(std::string_view socket_name, std::string_view state);

}  // namespace ringmail::core
