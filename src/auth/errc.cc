#include "ringmail/auth/errc.h"

namespace ringmail::auth {

namespace {
class category final : public std::error_category {
  public:
    const char* name() const noexcept override { return "ringmail.auth"; }
    std::string message(int ev) const override {
        switch (static_cast<errc>(ev)) {
            case errc::bad_users_file:
                return "invalid users file";
            case errc::bad_hash:
                return "unsupported or malformed password hash";
            case errc::empty_password:
                return "empty password";
            case errc::random_failed:
                return "random number generator failed";
            case errc::hash_failed:
                return "password hashing failed";
            case errc::bad_option:
                return "authentication option out of range";
        }
        return "unknown ringmail.auth error";
    }
};
}  // namespace

const std::error_category& auth_category() noexcept {
    static const category c;
    return c;
}

}  // namespace ringmail::auth
