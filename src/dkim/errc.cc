#include "ringmail/dkim/errc.h"

namespace ringmail::dkim {

namespace {
class category final : public std::error_category {
  public:
    const char* name() const noexcept override { return "ringmail.dkim"; }
    std::string message(int ev) const override {
        switch (static_cast<errc>(ev)) {
            case errc::bad_key:
                return "unusable DKIM private key";
            case errc::header_too_large:
                return "header section too large to sign";
            case errc::sign_failed:
                return "DKIM signing failed";
        }
        return "unknown ringmail.dkim error";
    }
};
}  // namespace

const std::error_category& dkim_category() noexcept {
    static const category c;
    return c;
}

}  // namespace ringmail::dkim
