#include "ringmail/spool/errc.h"

#include <string>

namespace ringmail::spool {

namespace {

class category final : public std::error_category {
  public:
    const char* name() const noexcept override { return "ringmail.spool"; }
    std::string message(int c) const override {
        switch (static_cast<errc>(c)) {
            case errc::message_too_large:
                return "message too large";
            case errc::io_error:
                return "spool I/O error";
            case errc::no_space:
                return "spool disk full";
            case errc::corrupt:
                return "spool record corrupt";
            case errc::unknown_queue_id:
                return "unknown queue id";
            case errc::unknown_writer:
                return "unknown spool writer";
            case errc::locked:
                return "spool shard directory locked by another process";
            case errc::ids_exhausted:
                return "spool segment sequence exhausted";
        }
        return "unknown spool error";
    }
};

}  // namespace

const std::error_category& error_category() noexcept {
    static const category c;
    return c;
}

}  // namespace ringmail::spool
