from twisted.application.service import ServiceMaker

rtunnel = ServiceMaker("rtunnel", "rtunnel.service", "SSH reverse tunnel (ssh -R)", "rtunnel")
