// The check macro of the TF-free C++ test programs: a failed expectation is
// printed and counted, and the program goes on to report them all.
#ifndef TF_ADAGRAD_TESTS_CC_EXPECT_H_
#define TF_ADAGRAD_TESTS_CC_EXPECT_H_

#include <cstdint>
#include <cstdio>

namespace tf_adagrad_test {

inline int failures = 0;
inline int64_t checks = 0;

}  // namespace tf_adagrad_test

#define EXPECT(condition)                                              \
  do {                                                                 \
    ++tf_adagrad_test::checks;                                         \
    if (!(condition)) {                                                \
      std::fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, \
                   #condition);                                        \
      ++tf_adagrad_test::failures;                                     \
    }                                                                  \
  } while (0)

#endif  // TF_ADAGRAD_TESTS_CC_EXPECT_H_
