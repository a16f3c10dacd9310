// A completion that calls a member function of its owner: the usual way an object with
// several kinds of in-flight ring operations (recv, send, cancel, ...) gives each its own
// user_data without an allocation per operation.
//
// Lives inside its owner, so it shares the owner's shard and lifetime rules (reactor.h): the
// owner counts its in-flight operations and is destroyed only when none is left.
#pragma once

#include "ringmail/core/reactor.h"

#include <cstdint>

namespace ringmail::core {

template <typename Owner, void (Owner::*Method)(int, std::uint32_t)>
class member_completion final : public completion {
public:
    explicit member_completion(Owner* owner) noexcept : _owner(owner) {}
    void complete(int res, std::uint32_t cqe_flags) override { (_owner->*Method)(res, cqe_flags); }

private:
    Owner* _owner;
};

}  // namespace ringmail::core
