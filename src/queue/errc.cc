#include "ringmail/queue/errc.h"

namespace ringmail::queue {

namespace {
class category final : public std::error_category {
  public:
    const char* name() const noexcept override { return "ringmail.queue"; }
    std::string message(int ev) const override {
        switch (static_cast<errc>(ev)) {
            case errc::queue_full:
                return "delivery queue full";
            case errc::duplicate_id:
                return "queue id already queued";
            case errc::no_recipients:
                return "message without recipients";
            case errc::bad_retry_policy:
                return "invalid retry policy";
        }
        return "unknown ringmail.queue error";
    }
};
}  // namespace

const std::error_category& queue_category() noexcept {
    static const category c;
    return c;
}

}  // namespace ringmail::queue
