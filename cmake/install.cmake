# SPDX-License-Identifier: MIT
# `make install` / `make uninstall` (PREFIX, DESTDIR): libmica.so.<version>
# with its soname, libmica.a, include/mica/*.h, mica.pc for pkg-config and a
# CMake package: find_package(mica) gives mica::mica (shared) and
# mica::mica_static.

install(TARGETS mica mica_shared EXPORT micaTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY include/mica DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h")

set(MICA_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/mica)
install(EXPORT micaTargets NAMESPACE mica:: DESTINATION ${MICA_CMAKEDIR})
include(CMakePackageConfigHelpers)
configure_package_config_file(cmake/micaConfig.cmake.in ${CMAKE_BINARY_DIR}/micaConfig.cmake
                              INSTALL_DESTINATION ${MICA_CMAKEDIR})
write_basic_package_version_file(${CMAKE_BINARY_DIR}/micaConfigVersion.cmake
                                 COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_BINARY_DIR}/micaConfig.cmake ${CMAKE_BINARY_DIR}/micaConfigVersion.cmake
        DESTINATION ${MICA_CMAKEDIR})

# The prefix is found from mica.pc's own place, so the tree can move (DESTDIR).
file(RELATIVE_PATH MICA_PC_TO_PREFIX ${CMAKE_INSTALL_FULL_LIBDIR}/pkgconfig ${CMAKE_INSTALL_PREFIX})
string(REGEX REPLACE "/$" "" MICA_PC_TO_PREFIX "${MICA_PC_TO_PREFIX}")
configure_file(cmake/mica.pc.in ${CMAKE_BINARY_DIR}/mica.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/mica.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# Removes what the last install wrote (CMake records it in install_manifest.txt).
add_custom_target(uninstall
  COMMAND ${CMAKE_COMMAND} -P ${CMAKE_SOURCE_DIR}/cmake/uninstall.cmake
  WORKING_DIRECTORY ${CMAKE_BINARY_DIR}
  COMMENT "removing the files listed in install_manifest.txt")
