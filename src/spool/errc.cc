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
    // Lets other parts test for a full disk or an I/O error without knowing the spool.
    std::error_condition default_error_condition(int c) const noexcept override {
        switch (static_cast<errc>(c)) {
            case errc::no_space:
                return std::errc::no_space_on_device;
            case errc::io_error:
                return std::errc::io_error;
            default:
                return std::error_condition(c, *this);
        }
    }
};

}  // namespace

const std::error_category& error_category() noexcept {
    static const category c;
    return c;
}

}  // namespace ringmail::spool
