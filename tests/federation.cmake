fs_script_test(test_federation COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/test_federation.py
               LABELS integration federation TIMEOUT 1200)
