from emova.data.world.build import main

main()
