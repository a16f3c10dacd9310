#include "ringmail/core/oncore.h"

namespace ringmail::core {

unsigned& this_shard_id() noexcept {
    thread_local unsigned id = no_shard;
    return id;
}

}  // namespace ringmail::core
