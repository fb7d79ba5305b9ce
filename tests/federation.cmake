fs_script_test(test_federation COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/test_federation.py
               LABELS integration federation TIMEOUT 1200)
# the federated source's reply path (whole and streamed replies, a round repeated after an agent
# left mid-reply, malformed streams) with a fake transport, no sockets
fs_test(test_fed SOURCES test_fed.c LIBS fs_federation LABELS unit federation)
