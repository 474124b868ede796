from pyinstrument_ai.launcher import main

main()
